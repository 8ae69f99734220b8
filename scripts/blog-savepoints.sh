#!/usr/bin/env bash
# The recipe savepointd replaces, kept as the baseline that `cargo bench --bench head_to_head` measures
# it against: the Kubernetes CronJob of the blog post "How to trigger savepoints in Ververica Platform"
# (a Helm chart's CronJob whose pod, at each cron time, turns every application name of its values.yaml
# into a VVP deploymentId through the labels VVP puts on the job's pods, then asks VVP for a savepoint).
# Per application, one after the other, exactly as the post's sequence diagram has it:
#
#   kubectl get pods -n <ns> -l deploymentName=<name> -o json | jq -r '.items[0].metadata.labels.deploymentId'
#   curl -X POST <vvp>/api/v1/namespaces/<vvp-ns>/savepoints -d '{"metadata":{"deploymentId":"<id>"}}'
#
# What it deliberately lacks, because the recipe lacks it (and savepointd exists to add it): no check that
# a pod was found (a missing one posts the id "null"), no check of VVP's answer, no waiting for the
# savepoint to complete, no retry, no bound on the load, no metrics, no retention, no idempotency (a
# second run in the same minute makes a second savepoint). It is fire and forget.
#
# Usage: blog-savepoints.sh [options] [APPLICATION ...]
#   --file FILE          application names, one per line (# starts a comment); also APPLICATIONS_FILE
#   --kubeconfig FILE    also KUBECONFIG (kubectl's own variable); in a CronJob pod, the service account
#   --namespace NS       Kubernetes namespace of the Flink pods; also KUBERNETES_NAMESPACE (default: default)
#   --vvp-url URL        VVP base URL, without /api; also VVP_URL
#   --vvp-namespace NS   VVP namespace; also VVP_NAMESPACE (default: default)
#   --token-file FILE    VVP API token, sent as a bearer token; also VVP_TOKEN_FILE (none when unset)

set -u
# Label values are matched byte by byte below; a UTF-8 locale would widen [a-z] on some systems.
export LC_ALL=C
shopt -s extglob

applications_file=${APPLICATIONS_FILE:-}
namespace=${KUBERNETES_NAMESPACE:-default}
vvp_url=${VVP_URL:-}
vvp_namespace=${VVP_NAMESPACE:-default}
token_file=${VVP_TOKEN_FILE:-}
names=()

usage() {
    sed -n 's/^# \{0,1\}//; /^Usage:/,/^$/p' "$0" >&2
    exit 2
}

while (($# > 0)); do
    case $1 in
        --file) applications_file=${2:?--file needs a file}; shift 2 ;;
        --kubeconfig) export KUBECONFIG=${2:?--kubeconfig needs a file}; shift 2 ;;
        --namespace) namespace=${2:?--namespace needs a namespace}; shift 2 ;;
        --vvp-url) vvp_url=${2:?--vvp-url needs a URL}; shift 2 ;;
        --vvp-namespace) vvp_namespace=${2:?--vvp-namespace needs a namespace}; shift 2 ;;
        --token-file) token_file=${2:?--token-file needs a file}; shift 2 ;;
        -h | --help) usage ;;
        --) shift; names+=("$@"); break ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) names+=("$1"); shift ;;
    esac
done

if [[ -n $applications_file ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%%#*}
        line=${line##+([[:space:]])}
        line=${line%%+([[:space:]])}
        [[ -n $line ]] && names+=("$line")
    done <"$applications_file"
fi
[[ -n $vvp_url ]] || { echo "VVP_URL or --vvp-url is required" >&2; exit 2; }
((${#names[@]} > 0)) || { echo "no application named" >&2; exit 2; }

auth=()
if [[ -n $token_file ]]; then
    auth=(-H "Authorization: Bearer $(<"$token_file")")
fi

# VVP's label value for a deployment name ("Fraud Detection" is fraud-detection): lower case, every run
# of other characters one '-', none at either end, at most 63 characters. Into $label, with builtins
# only (no subshell), so that the baseline pays for no process the recipe would not have had.
label_value() {
    label=${1,,}
    label=${label//+([^a-z0-9])/-}
    label=${label#-}
    label=${label:0:63}
    label=${label%-}
}

for name in "${names[@]}"; do
    label_value "$name"
    deployment_id=$(kubectl get pods -n "$namespace" -l "deploymentName=$label" -o json |
        jq -r '.items[0].metadata.labels.deploymentId')
    echo "$name: deploymentId $deployment_id"
    curl -s -X POST "$vvp_url/api/v1/namespaces/$vvp_namespace/savepoints" \
        -H 'Content-Type: application/json' "${auth[@]}" \
        -d "{\"metadata\":{\"deploymentId\":\"$deployment_id\"}}"
    echo
done
