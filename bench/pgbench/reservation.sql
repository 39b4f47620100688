-- pgbench script: the worker's reservation transaction for one batch of 10 one-line orders over
-- 20 products (core/orders/reservation.py), with the same statements in the same lock order:
-- orders by id (FOR NO KEY UPDATE), their products by id in one statement, then the stock update,
-- the ledger rows and the orders' outcomes as set-based statements, one commit.
-- Set-up (bench/pgbench/README.md): a migrated database with products 1..20 and pending orders
-- 1..:norders, each with one line. Run: pgbench -n -f bench/pgbench/reservation.sql -c 4 -j 2 -T 20
-- -D norders=200000 DB. Orders are picked at random, so most are not pending after a while: the
-- statements then still lock and write (attempts, stock) as a real batch does.
\set first random(1, :norders - 10)
\set p1 random(1, 20)
\set p2 random(1, 20)
BEGIN;
SELECT o.id, o.status, o.manager_id, l.product_id, l.quantity
  FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id
 WHERE o.id = ANY (ARRAY(SELECT generate_series(:first, :first + 9)))
 ORDER BY o.id, l.product_id
   FOR NO KEY UPDATE OF o;
SELECT id, stock, discontinued, deleted_at, manager_id, name
  FROM products WHERE id = ANY (ARRAY[LEAST(:p1, :p2), GREATEST(:p1, :p2)])
 ORDER BY id FOR NO KEY UPDATE;
UPDATE products p SET stock = p.stock - v.qty, updated_at = now()
  FROM unnest(ARRAY[LEAST(:p1, :p2), GREATEST(:p1, :p2)], ARRAY[5, 5]) AS v(id, qty)
 WHERE p.id = v.id;
INSERT INTO stock_movements (product_id, delta, stock_after, reason, order_id, actor, at)
SELECT CASE WHEN g % 2 = 0 THEN LEAST(:p1, :p2) ELSE GREATEST(:p1, :p2) END, -1, 0, 'reservation', g,
       'worker', now()
  FROM generate_series(:first, :first + 9) AS g;
UPDATE orders o SET status = 'confirmed', error = NULL, attempts = o.attempts + 1,
       processed_at = now(), updated_at = now()
  FROM unnest(ARRAY(SELECT generate_series(:first, :first + 9))) AS v(id)
 WHERE o.id = v.id;
COMMIT;
