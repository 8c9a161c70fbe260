from medseg.cli import main

main()
