-- Instances with messages to take (a suspended one only for control
-- messages) carry the time they became ready; hosts claim them from this
-- partial index, oldest first, instead of joining the inbox to the
-- instances (a scan that grew with the table and with the inbox's dead rows).
ALTER TABLE instances ADD COLUMN ready_at BIGINT;
UPDATE instances s SET ready_at = 0 WHERE EXISTS (
    SELECT 1 FROM inbox i WHERE i.instance_id = s.id AND (i.control OR s.status <> 'Suspended'));
CREATE INDEX instances_ready ON instances (ready_at) WHERE ready_at IS NOT NULL;
