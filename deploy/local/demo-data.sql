-- Sample CRM customers for `yespo-connector demo` (database `crm`, schema deploy/local/crm-schema.sql).
-- 2000 customers (ids 1..2000) with 0-2 segments each. Deterministic and idempotent: running it again
-- restores exactly these rows (the demo's live changes are undone), which Debezium streams as updates.
-- Every customer has an email: Yespo refuses to create a contact without any channel.

BEGIN;

INSERT INTO public.customers AS c (
  id, external_id, first_name, last_name, email, phone, web_push_subscription, city, region, country,
  postal_code, address_line, birth_date, loyalty_level, language_code, time_zone, notes
)
SELECT
  i,
  'crm-' || i,
  (ARRAY['Olena', 'Taras', 'Iryna', 'Mykola', 'Sofiia', 'Andrii', 'Daria', 'Petro', 'Halyna', 'Ostap'])[1 + i % 10],
  CASE WHEN i % 9 = 0 THEN NULL
       ELSE (ARRAY['Shevchenko', 'Kovalenko', 'Bondarenko', 'Tkachenko', 'Melnyk', 'Kravchenko', 'Oliinyk'])[1 + i % 7]
  END,
  'customer' || i || '@example.com',
  CASE WHEN i % 3 = 0 THEN NULL ELSE '+38050' || lpad(((i * 7919) % 10000000)::text, 7, '0') END,
  NULL,
  (ARRAY['Kyiv', 'Lviv', 'Odesa', 'Dnipro', 'Kharkiv'])[1 + i % 5],
  (ARRAY['Kyivska', 'Lvivska', 'Odeska', 'Dnipropetrovska', 'Kharkivska'])[1 + i % 5],
  CASE WHEN i % 11 = 0 THEN 'PL' ELSE 'UA' END,
  lpad((1000 + (i * 37) % 89000)::text, 5, '0'),
  CASE WHEN i % 4 = 0 THEN NULL ELSE 'Khreshchatyk St ' || (1 + i % 120) END,
  DATE '1960-01-01' + ((i * 97) % 15000),
  (ARRAY['bronze', 'silver', 'gold'])[1 + i % 3],
  CASE WHEN i % 6 = 0 THEN 'en' ELSE 'uk' END,
  'Europe/Kyiv',
  CASE WHEN i % 50 = 0 THEN repeat('long free-text note ', 300) ELSE NULL END
FROM generate_series(1, 2000) AS i
ON CONFLICT (id) DO UPDATE SET
  external_id = EXCLUDED.external_id, first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
  email = EXCLUDED.email, phone = EXCLUDED.phone, web_push_subscription = EXCLUDED.web_push_subscription,
  city = EXCLUDED.city, region = EXCLUDED.region, country = EXCLUDED.country,
  postal_code = EXCLUDED.postal_code, address_line = EXCLUDED.address_line, birth_date = EXCLUDED.birth_date,
  loyalty_level = EXCLUDED.loyalty_level, language_code = EXCLUDED.language_code,
  time_zone = EXCLUDED.time_zone, notes = EXCLUDED.notes, updated_at = now()
WHERE (c.external_id, c.first_name, c.last_name, c.email, c.phone, c.web_push_subscription, c.city, c.region,
       c.country, c.postal_code, c.address_line, c.birth_date, c.loyalty_level, c.language_code, c.time_zone,
       c.notes)
  IS DISTINCT FROM
      (EXCLUDED.external_id, EXCLUDED.first_name, EXCLUDED.last_name, EXCLUDED.email, EXCLUDED.phone,
       EXCLUDED.web_push_subscription, EXCLUDED.city, EXCLUDED.region, EXCLUDED.country, EXCLUDED.postal_code,
       EXCLUDED.address_line, EXCLUDED.birth_date, EXCLUDED.loyalty_level, EXCLUDED.language_code,
       EXCLUDED.time_zone, EXCLUDED.notes);

-- segments: 11 vip, 12 newsletter, 13 b2b
DELETE FROM public.customer_groups
WHERE customer_id BETWEEN 1 AND 2000
  AND (customer_id, group_id) NOT IN (
    SELECT i, g FROM generate_series(1, 2000) i, (VALUES (11), (12), (13)) v(g)
    WHERE (g = 11 AND i % 10 = 0) OR (g = 12 AND i % 2 = 0) OR (g = 13 AND i % 15 = 0)
  );

INSERT INTO public.customer_groups (customer_id, group_id, group_name)
SELECT i, g, CASE g WHEN 11 THEN 'vip' WHEN 12 THEN 'newsletter' ELSE 'b2b' END
FROM generate_series(1, 2000) i, (VALUES (11), (12), (13)) v(g)
WHERE (g = 11 AND i % 10 = 0) OR (g = 12 AND i % 2 = 0) OR (g = 13 AND i % 15 = 0)
ON CONFLICT (customer_id, group_id) DO NOTHING;

COMMIT;
