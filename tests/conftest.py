"""Suite-wide settings."""

import os

# Compile the numba kernels in the test process on first use, as before: on a fresh cache the
# default would run the torch route while a background process compiles them, so which route a
# test ran would depend on timing. tests/flows/test_warmup.py covers the default mode.
os.environ.setdefault("FLOWSEG_COMPILE", "foreground")
