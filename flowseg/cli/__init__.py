"""Command-line programs: one module per program, each with ``build_parser()``, ``main(argv) -> int``
and ``run()`` (the console-script entry point)."""
