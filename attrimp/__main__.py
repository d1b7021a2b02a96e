from attrimp.cli import main

main()
