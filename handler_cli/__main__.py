from handler_cli.cli import main

main()
