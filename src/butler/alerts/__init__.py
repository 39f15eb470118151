"""Task alerts: e-mail, Slack, Teams, webhooks, Signl4 and New Relic (docs in alerts.md)."""
