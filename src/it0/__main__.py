from it0.cli import main

main()
