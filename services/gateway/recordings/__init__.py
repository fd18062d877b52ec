"""One recording over every worker: uploads spooled to disk, pieces cut at silences, the pipeline that
dispatches them, and progress as the client sees it."""
