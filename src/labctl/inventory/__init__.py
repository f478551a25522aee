"""The inventory layer: what ``inventory.yaml`` may say (``schema``), where each value came
from (``yamlsrc``), the one door that loads it (``load``), and the checks that need the whole
inventory (``checks``). Nothing here changes a host or imports from ops/ or cli/."""
