-- The queue: who steps an instance and whether it has work live in a table
-- of their own, one row per instance, so that claims, releases, renewals
-- and the ready mark every message sets never update the instance row
-- (whose eight indexes each took a new entry per update) and an episode
-- that does not change the status updates it in place (HOT).
--
-- `ready_at`: the instance has messages it can take (a suspended one only
-- control messages), since then; hosts claim the oldest from a partial
-- index of ready instances nobody leases. A claim clears the mark; an
-- episode's commit, or a lease given back, sets it again if messages wait.
-- `lease_owner`, `lease_until`: the host stepping the instance, until when
-- (renewed while it lives); leases are indexed by expiry, so that a claim
-- finds the instances of a host that died.
CREATE TABLE queue (
    instance_id TEXT COLLATE "C" PRIMARY KEY,
    ready_at    BIGINT,
    lease_owner TEXT,
    lease_until BIGINT
);
INSERT INTO queue (instance_id, ready_at, lease_owner, lease_until)
SELECT s.id,
       CASE WHEN EXISTS (SELECT 1 FROM inbox i WHERE i.instance_id = s.id
                         AND (i.control OR s.status <> 'Suspended')) THEN 0 END,
       s.lease_owner, s.lease_until
FROM instances s;
CREATE INDEX queue_ready ON queue (ready_at) WHERE ready_at IS NOT NULL AND lease_owner IS NULL;
CREATE INDEX queue_leases ON queue (lease_until) WHERE lease_owner IS NOT NULL;
DROP INDEX instances_by_lease;
ALTER TABLE instances DROP COLUMN lease_owner, DROP COLUMN lease_until;
