-- Data for the pgbench scripts beside this file, in a database migrated to head
-- (`orderflow migrate`): 20 products with stock enough for any run, and :norders pending
-- one-line orders. psql -v norders=200000 -f bench/pgbench/setup.sql DB
INSERT INTO products (name, description, price, stock, low_stock_threshold, discontinued, created_at, updated_at)
SELECT 'Product ' || g, '', 1.50, 1000000000, 10, false, now(), now() FROM generate_series(1, 20) AS g;
INSERT INTO users (username, password_hash, role, created_at, updated_at, password_changed_at)
VALUES ('bench', 'x', 'admin', now(), now(), now());
INSERT INTO orders (status, user_id, total_price, attempts, created_at, updated_at, enqueued_at)
SELECT 'pending', 1, 1.50, 0, now(), now(), now() FROM generate_series(1, :norders);
INSERT INTO order_lines (order_id, product_id, position, name, quantity, unit_price)
SELECT g, 1 + g % 20, 0, 'Product', 1, 1.50 FROM generate_series(1, :norders) AS g;
ANALYZE;
