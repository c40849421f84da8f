from editscale.cli import main

main()
