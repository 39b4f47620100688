"""orderflow's composition root: the `orderflow` command (`orderflow.cli`), which starts the API
(`api`), the Celery worker and beat (`workers`), runs migrations and loads the demo catalogue
(`core`), and runs the benchmark (`bench`, imported only by that command). `core`, `api` and
`workers` never import it."""
