-- Copied from the team's shared benchmark material (shared/bench/dataset.sql) so the repo is self-contained.
-- Deterministic benchmark dataset (no random()): every value is a function of id.
-- Usage: psql -v rows=1000000 -v narrow_rows=1000000 -d src -f dataset.sql
-- (scripts/make-dataset.sh creates the database and passes the parameters)
\set ON_ERROR_STOP on
\if :{?rows}
\else
  \set rows 1000000
\endif
\if :{?narrow_rows}
\else
  \set narrow_rows :rows
\endif

SET client_min_messages = warning;
\set QUIET on
-- fixed session time zone so the generated instants do not depend on the server's TZ
SET TIME ZONE 'UTC';

DROP TABLE IF EXISTS bench_wide;
DROP TABLE IF EXISTS bench_narrow;

CREATE TABLE bench_wide (
    id          bigint PRIMARY KEY,
    int_col     integer,
    small_col   smallint,
    num_col     numeric(18,4),
    dbl_col     double precision,
    bool_col    boolean,
    text_col    text,
    vc_col      varchar(255),
    ts_col      timestamp with time zone,
    date_col    date,
    uuid_col    uuid,
    json_col    jsonb,
    arr_col     text[],
    updated_at  timestamp with time zone NOT NULL
);

-- ~10% NULLs in the nullable columns; every 997th row carries awkward text
-- (quotes, backslash, tab, newline, non-ASCII) so that round-trip checks mean something.
INSERT INTO bench_wide
SELECT
    i,
    ((i * 7919) % 2000000001 - 1000000000)::integer,
    ((i * 31) % 65535 - 32767)::smallint,
    CASE WHEN i % 10 = 3 THEN NULL
         ELSE round((((i * 104729) % 2000000000) - 1000000000)::numeric / 997, 4) END,
    CASE WHEN i % 10 = 4 THEN NULL ELSE (i::double precision / 7.0) * (CASE WHEN i % 2 = 0 THEN 1 ELSE -1 END) END,
    CASE WHEN i % 10 = 5 THEN NULL ELSE (i % 3 = 0) END,
    CASE WHEN i % 997 = 0 THEN E'O''Reilly "q" back\\slash\ttab\nnewline ü é 漢字 ✓'
         ELSE substr(md5(i::text) || md5((i + 1)::text), 1, 40) END,
    CASE WHEN i % 10 = 6 THEN NULL
         ELSE 'customer-' || i || '-' || repeat(chr(97 + (i % 26)::int), (i % 60)::int) END,
    timestamptz '2020-01-01 00:00:00+00' + (i * interval '17 seconds') + ((i % 1000000) * interval '1 microsecond'),
    date '2000-01-01' + (i % 9000)::int,
    md5('uuid' || i::text)::uuid,
    CASE WHEN i % 10 = 7 THEN NULL
         ELSE jsonb_build_object('k', i % 100, 'name', 'item-' || i, 'price', round((i % 10000)::numeric / 100, 2),
                                 'tags', jsonb_build_array('t' || (i % 5), 't' || (i % 7)), 'active', i % 2 = 0) END,
    CASE WHEN i % 10 = 8 THEN NULL
         ELSE ARRAY['a' || (i % 7), 'b' || (i % 11), 'c,' || (i % 13)] END,
    timestamptz '2024-01-01 00:00:00+00' + (i * interval '1 second') + ((i % 1000) * interval '1 millisecond')
FROM generate_series(1::bigint, :rows::bigint) AS g(i);

CREATE TABLE bench_narrow (
    id          bigint PRIMARY KEY,
    val         text,
    updated_at  timestamp with time zone NOT NULL
);

INSERT INTO bench_narrow
SELECT i,
       substr(md5(i::text), 1, 20),
       timestamptz '2024-01-01 00:00:00+00' + (i * interval '1 second')
FROM generate_series(1::bigint, :narrow_rows::bigint) AS g(i);

-- set hint bits / visibility map now, so the first benchmark read does not pay for it
VACUUM (FREEZE, ANALYZE) bench_wide;
VACUUM (FREEZE, ANALYZE) bench_narrow;

SELECT 'bench_wide' AS tbl, count(*) AS rows, pg_size_pretty(pg_table_size('bench_wide')) AS size FROM bench_wide
UNION ALL
SELECT 'bench_narrow', count(*), pg_size_pretty(pg_table_size('bench_narrow')) FROM bench_narrow;
