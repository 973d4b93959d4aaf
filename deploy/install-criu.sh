#!/usr/bin/env bash
# Placeholder replaced by the CRIU installer (see FACTS.md): Debian 13's criu in a private prefix.
exit 0
