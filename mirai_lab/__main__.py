from mirai_lab.cli import main

main()
