from edgemp.cli import main

main()
