"""Starting Sense tasks on cron schedules."""
