"""What a deployment runs on and a rough monthly cost, printed by `make deploy-plan`.

Pay-as-you-go list prices in USD for West Europe (Linux, 730 h/month, before tax), read from
the Azure pricing pages when written; they change, and other regions differ. A size not in
the table is shown without a price rather than guessed."""
from __future__ import annotations

from visage_deploy.settings import DeploySettings

HOURS_PER_MONTH = 730
VM_HOURLY = {  # Linux pay-as-you-go
    "Standard_D2s_v5": 0.096, "Standard_D4s_v5": 0.192, "Standard_D8s_v5": 0.384,
    "Standard_D2as_v5": 0.086, "Standard_D4as_v5": 0.172, "Standard_B2s": 0.0416,
}
OS_DISK_MONTHLY = 19.71          # 128 GiB Premium SSD (P10), AKS's default OS disk for these sizes
AKS_STANDARD_TIER_HOURLY = 0.10  # uptime SLA; the Free tier costs nothing
LOAD_BALANCER_MONTHLY = 18.25   # Standard LB, first 5 rules ($0.025/h); data processed ($0.005/GB) not counted
PUBLIC_IP_MONTHLY = 3.65        # one Standard static public IPv4 ($0.005/h); its Azure DNS label is free
PUBLIC_IPS = 2                  # the cluster's outbound (SNAT) IP that AKS makes + the gateway's static IP
# Key Vault Standard: $0.03 per 10,000 secret/certificate operations. ASSUMED ~400,000 a month: the CSI
# driver's rotation poll (AKS default every 2 min) reads each mounted object once per pod, and ~17 objects
# are mounted over the pods (17 × 30/h × 730 h ≈ 372,000), plus deploys.
KEY_VAULT_MONTHLY = 400_000 / 10_000 * 0.03
REGISTRY_MONTHLY = {"Basic": 5.0, "Standard": 20.0, "Premium": 50.0}
DEV_CASSANDRA_DISK_MONTHLY = 2.6       # 16 GiB Premium SSD (P4) for the in-cluster Cassandra
# Cosmos DB for Apache Cassandra: serverless bills request units and storage; "light use" is
# 10 million RU and 2 GiB a month. Autoscale bills the peak RU/s of each hour, never below 10 %
# of the maximum, at $0.012 per 100 RU/s-hour.
COSMOS_SERVERLESS_PER_MILLION_RU = 0.25
COSMOS_STORAGE_PER_GB = 0.25
COSMOS_AUTOSCALE_PER_100RU_HOUR = 0.012


def _vm_monthly(size: str) -> float | None:
    hourly = VM_HOURLY.get(size)
    return None if hourly is None else hourly * HOURS_PER_MONTH


def _store(settings: DeploySettings) -> tuple[str, float, float]:
    """(description, monthly low, monthly high)."""
    kind = settings.store_kind
    if kind == "in-cluster":
        return "Apache Cassandra StatefulSet in the cluster (16 GiB Premium SSD)", \
            DEV_CASSANDRA_DISK_MONTHLY, DEV_CASSANDRA_DISK_MONTHLY
    if kind == "external":
        return f"external Cassandra at {settings.cassandra_env.get('VISAGE_CASSANDRA_HOSTS', '?')} (not billed here)", 0, 0
    if settings.cosmos_throughput:
        hourly_per_unit = COSMOS_AUTOSCALE_PER_100RU_HOUR * settings.cosmos_throughput / 100
        return (f"Cosmos DB for Apache Cassandra {settings.cosmos_account}, autoscale up to "
                f"{settings.cosmos_throughput} RU/s", hourly_per_unit * 0.1 * HOURS_PER_MONTH,
                hourly_per_unit * HOURS_PER_MONTH)
    light = 10 * COSMOS_SERVERLESS_PER_MILLION_RU + 2 * COSMOS_STORAGE_PER_GB
    return (f"Cosmos DB for Apache Cassandra {settings.cosmos_account}, serverless (light use: 10 M RU, 2 GiB)",
            light, light * 10)


def estimate(settings: DeploySettings) -> list[tuple[str, str, float | None, float | None]]:
    """(item, what, monthly at the autoscaler minimum, monthly at its maximum) per line."""
    system, user = _vm_monthly(settings.system_vm_size), _vm_monthly(settings.node_vm_size)
    system_max = settings.system_node_count + 1
    tier = AKS_STANDARD_TIER_HOURLY * HOURS_PER_MONTH if settings.overlay == "prod" else 0.0
    store, store_low, store_high = _store(settings)
    return [
        ("control plane", f"AKS {'Standard' if tier else 'Free'} tier", tier, tier),
        ("system pool", f"{settings.system_node_count}-{system_max} × {settings.system_vm_size}",
         None if system is None else system * settings.system_node_count,
         None if system is None else system * system_max),
        ("user pool", f"{settings.node_count}-{settings.node_max_count} × {settings.node_vm_size}"
                      f"{', zones ' + ','.join(settings.zones) if settings.zones else ''}",
         None if user is None else user * settings.node_count,
         None if user is None else user * settings.node_max_count),
        ("OS disks", "128 GiB Premium SSD per node", OS_DISK_MONTHLY * (settings.system_node_count + settings.node_count),
         OS_DISK_MONTHLY * (system_max + settings.node_max_count)),
        ("registry", f"ACR {settings.registry_sku}", REGISTRY_MONTHLY.get(settings.registry_sku),
         REGISTRY_MONTHLY.get(settings.registry_sku)),
        ("load balancer", "Standard LB (the gateway's 443 and 80 rules, outbound rule)", LOAD_BALANCER_MONTHLY,
         LOAD_BALANCER_MONTHLY),
        ("public IPs", f"{PUBLIC_IPS} × Standard static: the cluster's outbound + {settings.public_ip}",
         PUBLIC_IP_MONTHLY * PUBLIC_IPS, PUBLIC_IP_MONTHLY * PUBLIC_IPS),
        ("Key Vault", f"Standard {settings.key_vault}: secrets, the certificate (assumed ~400k reads)",
         KEY_VAULT_MONTHLY, KEY_VAULT_MONTHLY),
        ("store", store, store_low, store_high),
    ]


def summary(settings: DeploySettings) -> list[str]:
    rows = estimate(settings)
    lines = [f"  {item:<14} {what:<80} {_money(low)}" + ("" if low == high else f" .. {_money(high)}")
             for item, what, low, high in rows]
    unknown = [item for item, _, low, _ in rows if low is None]
    total_low = sum(low for _, _, low, _ in rows if low is not None)
    total_high = sum(high for _, _, _, high in rows if high is not None)
    lines.append(f"  {'total':<14} {'per month, pay-as-you-go list prices (West Europe, USD)':<80} "
                 f"{_money(total_low)} .. {_money(total_high)}"
                 + (f" plus {', '.join(unknown)} (size not in the price table)" if unknown else ""))
    return lines


def _money(value: float | None) -> str:
    return "?" if value is None else f"${value:,.0f}"
