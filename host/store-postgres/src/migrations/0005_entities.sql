-- Entities: an entity is an instance whose id is `@name@key`. Its row
-- runs no component of its own (operations run on the component its name
-- is registered with now), so it names this placeholder, which holds no
-- code.
INSERT INTO components (digest, bytes, created_at) VALUES ('entity', ''::bytea, 0)
    ON CONFLICT (digest) DO NOTHING;
