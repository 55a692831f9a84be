"""Long actions started from the web pages: a job queue (:mod:`.queue`) and the detached
worker process that runs them (:mod:`.worker`)."""
