"""The e-commerce checkout, coordinated four ways over the same four services (docs/SAGAS.md).

* ``services``: order, inventory, payment and shipping, each a ``commit.saga.Service`` and a process;
* ``flows``: the checkout as an orchestrated saga, as TCC, as a choreography of events and as one atomic
  transaction, and ``run_checkout`` to run an order in any of them;
* ``checks``: the audit that tells a consistent end state from a broken one, and the anomalies a reader
  sees while a checkout is in flight;
* ``cluster``: a throwaway cluster with the saga settings, and the services as child processes;
* ``demo``: ``python -m examples.checkout.demo`` shows each way succeed and fail.
"""
