#!/usr/bin/env bash
# The whole job on the embedded default (SQLite + outbox), in ./demo, with sample data.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# Start clean each time: a sent issue is never rebuilt, so a second run needs a fresh demo.
rm -rf demo
mkdir -p demo
cd demo
export NEWSLETTER_DELIVERY_TRANSPORT=outbox   # no mail server needed: .eml files in demo/outbox/

# Each command is echoed first, in bold on a terminal only (no escape codes in a piped log).
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; "$@"; }

step newsletter init
step newsletter subscribers import "$here/subscribers.csv"
step newsletter subscribers list

# A week of sample articles dated in the current week (JSON + an RSS feed), this week's issue, previews.
step python3 "$here/feeds/make_articles.py" articles
step newsletter articles import articles/articles.json
# The events come as an RSS feed configured in config.toml (a local path here; usually a URL).
grep -q '^\[\[feeds\]\]' config.toml ||
    printf '\n[[feeds]]\nname = "Events calendar"\nurl = "articles/events.xml"\ncategory = "events"\n' >> config.toml
step newsletter articles fetch
step newsletter articles list
step newsletter issue build \
    --lead "https://trade-weekly.example.com/case-studies/how-a-mid-sized-dairy-cut-film-waste-by-a-third" \
    --intro "Welcome to this week's issue. **Recycled content** dominates the news; reply to tell us what you think."
step newsletter issue preview --out preview.html
step newsletter issue preview --subscriber ada@example.com --out preview-ada.html
step newsletter issue list
echo "open demo/preview.html (the whole issue) or demo/preview-ada.html (as ada@example.com gets it) in a browser"

# Send it through the outbox transport (no mail server needed): one .eml file per message.
step newsletter send --dry-run
step newsletter send
step newsletter stats
echo "$(ls outbox | wc -l) messages in demo/outbox/, e.g. demo/outbox/$(ls outbox | head -1)"
