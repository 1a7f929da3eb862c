"""The commands of our own, one module each, with its arguments and `main(argv) -> int` (`asteroid.cli` dispatches
to them; Lightning's fit / validate / test / predict go through `asteroid.lightning_cli`). Everything they call
lives below them: nothing outside this package imports a command."""
