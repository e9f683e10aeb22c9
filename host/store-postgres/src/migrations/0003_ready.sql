-- Instances with messages to take (a suspended one only for control
-- messages) carry the time they became ready; hosts claim them from a
-- partial index of the ready instances nobody leases, oldest first, instead
-- of joining the inbox to the instances (a scan that grew with the table
-- and with the inbox's dead rows). A claim clears the mark; an episode's
-- commit, or a lease given back, sets it again if messages wait.
ALTER TABLE instances ADD COLUMN ready_at BIGINT;
UPDATE instances s SET ready_at = 0 WHERE EXISTS (
    SELECT 1 FROM inbox i WHERE i.instance_id = s.id AND (i.control OR s.status <> 'Suspended'));
CREATE INDEX instances_ready ON instances (ready_at)
    WHERE ready_at IS NOT NULL AND lease_owner IS NULL;
-- Leases by expiry, so that a claim finds the instances of a host that
-- died (their leases expired) without reading every lease.
DROP INDEX instances_by_lease;
CREATE INDEX instances_by_lease ON instances (lease_until) WHERE lease_owner IS NOT NULL;
