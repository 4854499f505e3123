from sanitas.cli import main

main()
