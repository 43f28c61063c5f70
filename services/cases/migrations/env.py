from servicekit.migrations import run_env
from services.cases.adapters.orm import metadata

run_env(metadata)
