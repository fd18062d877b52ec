"""Batch jobs: recordings transcribed in the background, durable across connections and gateway restarts.

A request's path: `servicer` (JobService) checks a new job (`requests`), spools its audio (`spool`) and
stores it (`store`, SQLite or PostgreSQL); `runner` claims queued jobs fairly between clients and leases
them; `execution` sends each job's pieces through the fleet queue at batch priority and records every
finished piece, so a job resumes from its last finished piece; `webhooks` announces the end;
`retention` removes old jobs and their audio; `metrics` counts them for Prometheus and `scribe status`.
"""
