#!/bin/sh
# Configuration by the environment, as a deployment would do it.
#
#   sh examples/env_config.sh            (PYTHON=.venv/bin/python to pick one)
#
# Validates the settings, shows the execution plan, then runs an application
# that only calls configure_logging(). Needs nothing but enrichlog installed.
set -eu
PYTHON="${PYTHON:-python3}"

export ENRICHLOG_ENRICHERS='static://?service=checkout&environment=staging,hostname://,process://,env://?fields=GIT_SHA,REGION,static://?tier=gold&name=tier&dependencies=hostname'
export ENRICHLOG_LEVEL=info
export ENRICHLOG_FORMAT=json
export GIT_SHA=3f2c1d9 REGION=eu-west-1

# Exit status 1 and every error listed when something is wrong: use it in CI.
"$PYTHON" -m enrichlog check

# The plan: levels, each enricher's source, timeouts, dependencies.
"$PYTHON" -m enrichlog plan
"$PYTHON" -m enrichlog plan --format mermaid

# The application knows nothing of the enrichers.
"$PYTHON" -c '
from enrichlog import configure_logging, get_logger
configure_logging()
get_logger().info("checkout", user_id=42)
'
