"""Alerts on task outcomes: e-mail, Slack, Teams, webhooks, Signl4 and New Relic (README, "Alerts")."""
