-- 0008: the broker reads messages through one path only. The transport has always read
-- with the plain statements of transport/tables.sql (prepared once per connection, and
-- checking max_deliveries in channel.py); swf.queue_read, a PL/pgSQL copy of the same read
-- that nothing in the library called, is dropped so that there is one read to maintain.
DROP FUNCTION IF EXISTS swf.queue_read(text[], boolean[], integer, double precision, integer,
                                       boolean);
