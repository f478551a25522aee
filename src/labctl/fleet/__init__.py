"""Several hosts from one inventory, applied through Ansible.

labctl decides *what* each host runs (labctl.load.fleet: every host's view, checked
like any single-host inventory); Ansible only carries it there and reports back, the way its
own split (inventory, playbook, module, connection) suggests:

- ``slices``: each host's view as an ordinary inventory file (its *slice*);
- ``keys``: the backends' API keys, generated once on the controller (0600);
- ``ansible``: the run directory (``ansible.cfg``, the Ansible inventory of hosts and their
  variables), ``ansible-playbook`` run through labctl.host.proc (argv only, bounded), and
  the per-host report written by labctl's callback plugin (``plugins/callback``);
- ``apply``: ``up``, ``down`` and ``status`` across the fleet.

The playbooks (``playbooks/``) install labctl on each host (pinned to the controller's
version), copy the slice and keys, and run ``labctl up --json`` / ``status --json`` /
``down --json`` there as the host's user; every value they use comes from the inventory
labctl generates, never from the operator's text.
"""
