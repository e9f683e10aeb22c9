-- Sub-orchestrations: a child instance records the call it answers, so that
-- its end goes into the parent's inbox.
ALTER TABLE instances ADD COLUMN parent_instance TEXT;
ALTER TABLE instances ADD COLUMN parent_execution TEXT;
ALTER TABLE instances ADD COLUMN parent_task INTEGER;
