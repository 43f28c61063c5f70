from servicekit.migrations import run_env
from services.identity.adapters.orm import metadata

run_env(metadata)
