"""File formats: competition RLE, Sartorius train.csv and submissions, images and label TIFs,
Cellpose-style folders, COCO json and the Usiigaci layout. The only package (with
``flowseg.model.checkpoint`` and ``flowseg.cli``) that touches files."""
