from it0.core.migrate import run_env

run_env()
