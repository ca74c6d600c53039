#!/usr/bin/env bash
# Runs the whole test suite (filled in by the test-infrastructure work).
set -euo pipefail
echo "no tests yet"
