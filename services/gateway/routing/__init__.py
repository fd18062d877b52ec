"""Which worker gets each call: the registry of workers and their health, the monitor that keeps it current
(supervisord, static endpoints, DNS), and the fleet's one bounded queue."""
