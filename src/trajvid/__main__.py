from trajvid.cli import main

main()
