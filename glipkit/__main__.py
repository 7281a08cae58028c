from glipkit.cli.app import main

main()
