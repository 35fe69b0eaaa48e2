#!/usr/bin/env bash
# The whole job on the embedded default (SQLite + outbox), in ./demo, with sample data.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p demo
cd demo
export NEWSLETTER_DELIVERY_TRANSPORT=outbox   # no mail server needed: .eml files in demo/outbox/

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step newsletter init
step newsletter subscribers import "$here/subscribers.csv"
step newsletter subscribers list
