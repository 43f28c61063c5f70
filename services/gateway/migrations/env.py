from servicekit.migrations import run_env
from services.gateway.adapters.orm import metadata

run_env(metadata)
