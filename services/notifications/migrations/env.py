from servicekit.migrations import run_env
from services.notifications.adapters.orm import metadata

run_env(metadata)
