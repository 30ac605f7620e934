"""`python -m ganaug.launch`: the launcher's entry point and nothing else (its __main__ runs
`ganaug.cli.launch_main`). The torchrun wrapper it starts is the library module ganaug.torchrun."""
