#!/usr/bin/env python3
"""Least privilege in the SAM template (issue 17, O1), run by `make lint` and `make test`.

Fails on any function policy that grants more than named resources allow:
- an inline statement whose `Resource` is `*` (or an ARN that ends in a bare `*`
  service-wide, such as `arn:aws:s3:::*`), or whose `Action` is `*` or `service:*`;
- a SAM policy template that is not scoped to a named resource (only those listed in
  SCOPED_TEMPLATES are allowed, each with its resource parameter present);
- an AWS managed policy other than the few in MANAGED_ALLOWED.

Resources that AWS cannot name (a few read-only actions such as `xray:PutTraceSegments`
or `cloudwatch:PutMetricData`) are allowed with `*` only for the actions in
STAR_ALLOWED_ACTIONS.

Usage: scripts/check-iam.py [template ...]   (default infra/template.yaml)
       scripts/check-iam.py --self-test      (the checks catch what they should)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# SAM policy templates scoped to one named resource, and the parameter that names it.
SCOPED_TEMPLATES = {
    "DynamoDBCrudPolicy": "TableName",
    "DynamoDBReadPolicy": "TableName",
    "DynamoDBWritePolicy": "TableName",
    "S3ReadPolicy": "BucketName",
    "S3WritePolicy": "BucketName",
    "S3CrudPolicy": "BucketName",
    "SQSSendMessagePolicy": "QueueName",
    "SNSPublishMessagePolicy": "TopicName",
    "SSMParameterReadPolicy": "ParameterName",
    "AWSSecretsManagerGetSecretValuePolicy": "SecretArn",
    "LambdaInvokePolicy": "FunctionName",
}
MANAGED_ALLOWED = {
    "AWSLambdaBasicExecutionRole",
    "AWSLambdaVPCAccessExecutionRole",
    "AWSXRayDaemonWriteAccess",
}
# Actions that take no resource-level permissions, so `*` is their only resource.
STAR_ALLOWED_ACTIONS = {
    "cloudwatch:PutMetricData",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "elasticache:DescribeSnapshots",
}


class Loader(yaml.SafeLoader):
    """Reads CloudFormation's short tags (`!Ref`, `!Sub`, ...) as `{"Ref": ...}` maps."""


def _tag(loader: Loader, suffix: str, node: yaml.Node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        return {name: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


Loader.add_multi_constructor("!", _tag)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def wildcard_resource(resource) -> bool:
    if not isinstance(resource, str):
        return False  # !Sub / !GetAtt / !Ref: a named resource
    if resource == "*":
        return True
    # arn:partition:service:region:account:resource with a bare `*` as the resource.
    parts = resource.split(":", 5)
    return len(parts) == 6 and parts[5] in ("*", "*/*")


def wildcard_action(action) -> bool:
    return isinstance(action, str) and (action == "*" or action.endswith(":*"))


def check_statement(where: str, statement: dict) -> list[str]:
    problems = []
    if statement.get("Effect", "Allow") != "Allow":
        return problems
    actions = as_list(statement.get("Action", []))
    for action in actions:
        if wildcard_action(action):
            problems.append(f"{where}: action `{action}` grants a whole service")
    for resource in as_list(statement.get("Resource", [])):
        if wildcard_resource(resource):
            unnamed = [a for a in actions if a not in STAR_ALLOWED_ACTIONS]
            if unnamed:
                problems.append(
                    f"{where}: resource `{resource}` for {', '.join(map(str, unnamed))}: name the resource"
                )
    return problems


def conditional_branches(policies) -> list[tuple[str, object]]:
    """The policies with each `!If [condition, a, b]` opened into both branches
    (`AWS::NoValue` dropped), so a conditional policy is checked like any other."""
    found = []
    for i, policy in enumerate(as_list(policies)):
        branches = policy.get("Fn::If") if isinstance(policy, dict) and len(policy) == 1 else None
        if isinstance(branches, list) and len(branches) == 3:
            for k, branch in enumerate(branches[1:]):
                if branch != {"Ref": "AWS::NoValue"}:
                    found.append((f"[{i}].If[{k}]", branch))
        else:
            found.append((f"[{i}]", policy))
    return found


def check_policies(function: str, policies) -> list[str]:
    problems = []
    for index, policy in conditional_branches(policies):
        where = f"{function}.Policies{index}"
        if isinstance(policy, str):
            if policy not in MANAGED_ALLOWED:
                problems.append(f"{where}: managed policy `{policy}` is not scoped to this stack's resources")
            continue
        if not isinstance(policy, dict):
            problems.append(f"{where}: unreadable policy")
            continue
        if "Statement" in policy:
            for j, statement in enumerate(as_list(policy["Statement"])):
                problems += check_statement(f"{where}.Statement[{j}]", statement)
            continue
        for template, params in policy.items():
            needed = SCOPED_TEMPLATES.get(template)
            if needed is None:
                problems.append(f"{where}: policy template `{template}` is not known to be scoped")
            elif not isinstance(params, dict) or needed not in params:
                problems.append(f"{where}: `{template}` without its `{needed}`")
            elif params[needed] in ("*", ""):
                problems.append(f"{where}: `{template}` on every {needed}")
    return problems


def check(template: dict) -> list[str]:
    problems = []
    for name, resource in (template.get("Resources") or {}).items():
        kind = resource.get("Type")
        props = resource.get("Properties") or {}
        if kind == "AWS::Serverless::Function":
            problems += check_policies(name, props.get("Policies", []))
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            document = props.get("PolicyDocument") or {}
            for j, statement in enumerate(as_list(document.get("Statement", []))):
                problems += check_statement(f"{name}.Statement[{j}]", statement)
        elif kind == "AWS::IAM::Role":
            for policy in props.get("Policies") or []:
                document = policy.get("PolicyDocument") or {}
                for j, statement in enumerate(as_list(document.get("Statement", []))):
                    problems += check_statement(f"{name}.{policy.get('PolicyName')}.Statement[{j}]", statement)
            for arn in props.get("ManagedPolicyArns") or []:
                if isinstance(arn, str) and arn.split("/")[-1] not in MANAGED_ALLOWED:
                    problems.append(f"{name}: managed policy `{arn}` is not scoped to this stack's resources")
    return problems


SELF_TEST = """
Resources:
  Good:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - DynamoDBCrudPolicy: {TableName: !Ref Table}
        - AWSLambdaBasicExecutionRole
        - Statement:
            - {Effect: Allow, Action: ["s3:GetObject"], Resource: !Sub "arn:aws:s3:::b-${AWS::AccountId}/*"}
            - {Effect: Allow, Action: ["cloudwatch:PutMetricData"], Resource: "*"}
  Bad:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - AmazonS3FullAccess
        - S3ReadPolicy: {}
        - Statement:
            - {Effect: Allow, Action: "dynamodb:*", Resource: !GetAtt Table.Arn}
            - {Effect: Allow, Action: ["s3:GetObject"], Resource: "*"}
            - {Effect: Allow, Action: ["s3:GetObject"], Resource: "arn:aws:s3:::*"}
        - !If
          - SomeCondition
          - Statement:
              - {Effect: Allow, Action: ["elasticache:DeleteSnapshot"], Resource: "*"}
          - !Ref AWS::NoValue
"""


def self_test() -> int:
    problems = check(yaml.load(SELF_TEST, Loader=Loader))
    expected = [
        "Bad.Policies[0]: managed policy",
        "Bad.Policies[1]: `S3ReadPolicy` without",
        "Bad.Policies[2].Statement[0]: action `dynamodb:*`",
        "Bad.Policies[2].Statement[1]: resource `*`",
        "Bad.Policies[2].Statement[2]: resource `arn:aws:s3:::*`",
        "Bad.Policies[3].If[0].Statement[0]: resource `*`",
    ]
    missed = [e for e in expected if not any(p.startswith(e) for p in problems)]
    wrong = [p for p in problems if p.startswith("Good")]
    for line in missed:
        print(f"check-iam self-test: missed `{line}...`")
    for line in wrong:
        print(f"check-iam self-test: flagged a scoped policy: {line}")
    if missed or wrong or len(problems) != len(expected):
        print(f"check-iam self-test failed: {problems}")
        return 1
    print(f"check-iam self-test passed ({len(expected)} wildcard grants caught, 0 false alarms)")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--self-test"]:
        return self_test()
    paths = [Path(p) for p in argv[1:]] or [ROOT / "infra" / "template.yaml"]
    problems = []
    for path in paths:
        template = yaml.load(path.read_text(), Loader=Loader)
        problems += [f"{path.relative_to(ROOT) if path.is_absolute() else path}: {p}" for p in check(template)]
    for problem in problems:
        print(problem)
    if problems:
        print(f"check-iam: {len(problems)} policies grant more than named resources")
        return 1
    print(f"check-iam: every function policy is scoped to named resources ({', '.join(map(str, paths))})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
