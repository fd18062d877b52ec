from services.http_api.server import main

main()
