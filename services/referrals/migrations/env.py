from servicekit.migrations import run_env
from services.referrals.adapters.orm import metadata

run_env(metadata)
