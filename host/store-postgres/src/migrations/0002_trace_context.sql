-- W3C trace context: the traceparent of the request that started an
-- instance, which its episodes and activities are traced under.
ALTER TABLE instances ADD COLUMN trace_parent TEXT;
