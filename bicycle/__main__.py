from bicycle.cli import main

main()
