from edgemp.cli import main

main(prog_name="edgemp")
