from services.gpu_worker.server import main

main()
