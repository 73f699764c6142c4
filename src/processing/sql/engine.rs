//! The `sql` transform's query: planned once per table with DataFusion's SQL planner and type
//! coercion (its analyzer), compiled to physical expressions, and evaluated on Arrow record
//! batches by this module (filter, then projections), so every output row is known to come from
//! one input row. DataFusion's execution engine is not used: it is async and re-orders and
//! re-batches rows, where the pipeline needs each record's outputs, in order, synchronously on
//! the blocking pool the assembler runs on.
//!
//! Must not: do I/O, read the clock, or keep state between batches (the per-record-shape plan
//! cache of inferred types is a memo of a pure function).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array};
use arrow::compute::{filter, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion_common::{DataFusionError, SchemaError, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::{AggregateUDF, Expr, HigherOrderUDF, LogicalPlan, ScalarUDF, TableSource, Volatility, WindowUDF};
use datafusion_physical_expr::PhysicalExpr;
use serde::de::DeserializeSeed;
use spillway_sink_s3::parquet::columns::{KeyOptions, RowSeed, StructColumn};
use spillway_sink_s3::parquet::infer::Inferred;
use spillway_sink_s3::parquet::schema::{ColumnType, Table};

use super::{SQL_MALFORMED_DATA, SQL_NON_JSON_RECORD, SQL_QUERY_FAILED, SqlConfig, TABLE_NAME};
use crate::processing::transform::{BatchTransform, TransformFailure};

/// Record shapes whose plans an inferring transform keeps; past it the memo starts afresh.
const MAX_CACHED_SHAPES: usize = 1024;
/// Columns a query may name that a record with inferred types lacks (each read as NULL).
const MAX_MISSING_COLUMNS: usize = 256;

/// Plan `query` against `table` (`None`: inferred types, columns the query names read as NULL);
/// the error is DataFusion's message, or why the query is not a stateless one.
pub fn check(query: &str, table: Option<&Table>) -> Result<(), String> {
    let catalog = Catalog::new();
    let columns = table.map_or_else(Vec::new, |table| table.columns.clone());
    let fields = spillway_sink_s3::parquet::schema::struct_fields(&columns);
    let schema = Arc::new(Schema::new(fields));
    let allow_missing = table.is_none();
    catalog.plan(query, schema, allow_missing).map(drop)
}

/// One `sql` transform, compiled.
pub struct SqlTransform {
    query: String,
    catalog: Catalog,
    options: Arc<KeyOptions>,
    renames: HashMap<String, String>,
    table: TableMode,
}

enum TableMode {
    Given {
        columns: Vec<(String, ColumnType)>,
        program: Program,
    },
    /// Plans by record shape (the inferred table's Arrow schema).
    Inferred {
        plans: Mutex<HashMap<Schema, Arc<Result<Program, String>>>>,
    },
}

impl SqlTransform {
    /// Compile the transform; fails only where [`SqlConfig::validate`] reports a problem.
    pub fn build(config: &SqlConfig) -> Result<Self, String> {
        let problems = config.validate();
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|(field, message)| format!("{field}: {message}")).collect();
            return Err(text.join("; "));
        }
        let table = config.table().map_err(|_| "schema: invalid".to_string())?;
        let catalog = Catalog::new();
        let options = Arc::new(KeyOptions {
            case_insensitive: config.case_insensitive,
            dots_to_underscores: config.convert_dots_in_json_keys_to_underscores,
        });
        let table = match table {
            Some(table) => {
                let program = catalog.plan(&config.query, table.arrow_schema(), false)?;
                TableMode::Given { columns: table.columns, program }
            }
            None => TableMode::Inferred { plans: Mutex::default() },
        };
        Ok(Self {
            query: config.query.clone(),
            catalog,
            options,
            renames: config.column_to_json_key_mappings.clone().into_iter().collect(),
            table,
        })
    }

    fn given(&self, columns: &[(String, ColumnType)], program: &Program, records: &[&[u8]]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = vec![Ok(Vec::new()); records.len()];
        let mut rows = StructColumn::new(columns, self.options.clone(), &self.renames);
        // Row i of the batch is record `read[i]`.
        let mut read: Vec<usize> = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            match read_row(&mut rows, record) {
                Ok(()) => read.push(index),
                Err(failure) => outcomes[index] = Err(failure),
            }
        }
        if read.is_empty() {
            return outcomes;
        }
        let converted = rows.finish().map_err(DataFusionError::from).and_then(|array| batch_of(array, &[]));
        let evaluated = converted.and_then(|batch| program.run(batch));
        match evaluated {
            Ok(outputs) => {
                for (row, data) in outputs {
                    if let Ok(list) = &mut outcomes[read[row]] {
                        list.push(data);
                    }
                }
            }
            // One record's error (a failing cast, say) fails the batch: evaluate each half again,
            // down to single records, so the error lands on the records that raise it alone (a
            // batch that evaluates gives each row what it gives alone: the kernels are row-wise).
            Err(_) if records.len() > 1 => {
                let middle = records.len() / 2;
                let mut halves = self.given(columns, program, &records[..middle]);
                halves.extend(self.given(columns, program, &records[middle..]));
                return halves;
            }
            Err(error) => outcomes[read[0]] = Err(query_failed(&error)),
        }
        outcomes
    }

    fn inferred(
        &self,
        plans: &Mutex<HashMap<Schema, Arc<Result<Program, String>>>>,
        records: &[&[u8]],
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = vec![Ok(Vec::new()); records.len()];
        // Records grouped by shape, in order of first appearance (groups are evaluated apart).
        let mut groups: Vec<(Table, Vec<usize>)> = Vec::new();
        let mut by_shape: HashMap<Schema, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            let mut inferred = Inferred::default();
            if let Err(error) = inferred.add_record(record, &self.options) {
                let code = match error.classify() {
                    serde_json::error::Category::Data => SQL_MALFORMED_DATA,
                    _ => SQL_NON_JSON_RECORD,
                };
                outcomes[index] = Err(TransformFailure { code, message: error.to_string() });
                continue;
            }
            let table = inferred.table().unwrap_or(Table { columns: Vec::new() });
            let shape = (*table.arrow_schema()).clone();
            match by_shape.get(&shape) {
                Some(&group) => groups[group].1.push(index),
                None => {
                    by_shape.insert(shape, groups.len());
                    groups.push((table, vec![index]));
                }
            }
        }
        for (table, members) in groups {
            let program = self.program_for(plans, &table);
            let program = match program.as_ref() {
                Ok(program) => program,
                Err(message) => {
                    for index in members {
                        outcomes[index] = Err(TransformFailure { code: SQL_QUERY_FAILED, message: message.clone() });
                    }
                    continue;
                }
            };
            let group_records: Vec<&[u8]> = members.iter().map(|&index| records[index]).collect();
            for (index, outcome) in members.into_iter().zip(self.given(&table.columns, program, &group_records)) {
                outcomes[index] = outcome;
            }
        }
        outcomes
    }

    fn program_for(
        &self,
        plans: &Mutex<HashMap<Schema, Arc<Result<Program, String>>>>,
        table: &Table,
    ) -> Arc<Result<Program, String>> {
        let shape = (*table.arrow_schema()).clone();
        let mut plans = plans.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(program) = plans.get(&shape) {
            return program.clone();
        }
        if plans.len() >= MAX_CACHED_SHAPES {
            plans.clear();
        }
        let program = Arc::new(self.catalog.plan(&self.query, Arc::new(shape.clone()), true));
        plans.insert(shape, program.clone());
        program
    }
}

type Outcome = Result<Vec<Vec<u8>>, TransformFailure>;

impl BatchTransform for SqlTransform {
    fn apply_batch(&self, records: &[&[u8]]) -> Vec<Outcome> {
        match &self.table {
            TableMode::Given { columns, program } => self.given(columns, program, records),
            TableMode::Inferred { plans } => self.inferred(plans, records),
        }
    }
}

/// Read one record into the builders, or refuse it leaving them as they were (the Parquet
/// format's reader: the same JSON walk and OpenX key rules).
pub(super) fn read_row(rows: &mut StructColumn, data: &[u8]) -> Result<(), TransformFailure> {
    let before = rows.len();
    let mut deserializer = sonic_rs::Deserializer::from_slice(data);
    let read = RowSeed(rows).deserialize(&mut deserializer).and_then(|()| deserializer.end());
    read.map_err(|error| {
        rows.truncate(before);
        let code = match error.classify() {
            sonic_rs::error::Category::TypeUnmatched => SQL_MALFORMED_DATA,
            _ => SQL_NON_JSON_RECORD,
        };
        TransformFailure { code, message: error.to_string() }
    })
}

fn query_failed(error: &DataFusionError) -> TransformFailure {
    TransformFailure { code: SQL_QUERY_FAILED, message: one_line(error) }
}

/// DataFusion's message on one line (its context is on lines of its own).
pub(super) fn one_line(error: &DataFusionError) -> String {
    error.strip_backtrace().replace("\ncaused by\n", ": ").replace('\n', " ")
}

/// The table's rows as a record batch, with `extra` all-NULL columns after them.
pub(super) fn batch_of(array: arrow::array::StructArray, extra: &[Arc<Field>]) -> Result<RecordBatch, DataFusionError> {
    let rows = array.len();
    let (fields, mut columns, _valid) = array.into_parts();
    let mut all_fields: Vec<Arc<Field>> = fields.iter().cloned().collect();
    for field in extra {
        all_fields.push(field.clone());
        columns.push(new_null_array(field.data_type(), rows));
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(Arc::new(Schema::new(all_fields)), columns, &options)?)
}

/// One step of a compiled query, bottom up.
pub(super) enum Step {
    /// The table scan's column selection.
    Select(Vec<usize>),
    Filter(Arc<dyn PhysicalExpr>),
    Project {
        expressions: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

/// A query compiled for one table.
pub struct Program {
    pub(super) steps: Vec<Step>,
    /// All-NULL columns appended to the table (columns the query names that records lack).
    pub(super) missing: Vec<Arc<Field>>,
}

impl Program {
    /// Each output row as (input row, compact JSON object), in input order.
    pub(super) fn run(&self, batch: RecordBatch) -> Result<Vec<(usize, Vec<u8>)>, DataFusionError> {
        let (rows, batch) = self.evaluate(batch)?;
        let lines = to_json_lines(&batch)?;
        Ok(rows.into_iter().zip(lines).collect())
    }

    /// The query's output batch, with the input row of each output row.
    pub(super) fn evaluate(&self, batch: RecordBatch) -> Result<(Vec<usize>, RecordBatch), DataFusionError> {
        let mut batch = if self.missing.is_empty() { batch } else { widen(batch, &self.missing)? };
        let mut rows: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..batch.num_rows() as u32));
        for step in &self.steps {
            match step {
                Step::Select(indices) => batch = batch.project(indices)?,
                Step::Filter(predicate) => {
                    let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let Some(mask) = mask.as_boolean_opt() else {
                        return Err(DataFusionError::Plan(format!(
                            "the WHERE condition is {}, not boolean",
                            mask.data_type()
                        )));
                    };
                    // NULL counts as false, as SQL has it.
                    batch = filter_record_batch(&batch, mask)?;
                    rows = filter(&rows, mask)?;
                }
                Step::Project { expressions, schema } => {
                    let count = batch.num_rows();
                    let columns = expressions
                        .iter()
                        .map(|expression| expression.evaluate(&batch).and_then(|value| value.into_array(count)))
                        .collect::<Result<Vec<_>, _>>()?;
                    let options = RecordBatchOptions::new().with_row_count(Some(count));
                    batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
                }
            }
        }
        let rows = rows.as_primitive::<arrow::datatypes::UInt32Type>();
        Ok((rows.values().iter().map(|&row| row as usize).collect(), batch))
    }
}

fn widen(batch: RecordBatch, missing: &[Arc<Field>]) -> Result<RecordBatch, DataFusionError> {
    let rows = batch.num_rows();
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    for field in missing {
        fields.push(field.clone());
        columns.push(new_null_array(field.data_type(), rows));
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)?)
}

/// One compact JSON object per row; NULL columns are written as `null` (a selected column is
/// always there).
pub(super) fn to_json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, DataFusionError> {
    let mut buffer = Vec::with_capacity(batch.get_array_memory_size() / 2 + batch.num_rows());
    {
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buffer);
        writer.write(batch)?;
        writer.finish()?;
    }
    // JSON escapes newlines inside strings: every `\n` ends a row.
    let lines: Vec<Vec<u8>> = buffer.split(|&byte| byte == b'\n').map(<[u8]>::to_vec).collect();
    let mut lines = lines;
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    if lines.len() != batch.num_rows() {
        // A batch with no columns writes no line per row.
        return Ok(vec![b"{}".to_vec(); batch.num_rows()]);
    }
    Ok(lines)
}

/// DataFusion's function registry and the one table, for its SQL planner.
pub(super) struct Catalog {
    functions: HashMap<String, Arc<ScalarUDF>>,
    aggregates: HashMap<String, Arc<AggregateUDF>>,
    higher_order: HashMap<String, Arc<HigherOrderUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

impl Catalog {
    pub(super) fn new() -> Self {
        let mut functions = HashMap::new();
        let scalar = datafusion_functions::all_default_functions()
            .into_iter()
            .chain(datafusion_functions_nested::all_default_nested_functions());
        for function in scalar {
            for alias in function.aliases() {
                functions.insert(alias.clone(), function.clone());
            }
            functions.insert(function.name().to_string(), function);
        }
        let mut aggregates = HashMap::new();
        for function in datafusion_functions_aggregate::all_default_aggregate_functions() {
            for alias in function.aliases() {
                aggregates.insert(alias.clone(), function.clone());
            }
            aggregates.insert(function.name().to_string(), function);
        }
        let mut higher_order = HashMap::new();
        for function in datafusion_functions_nested::all_default_higher_order_functions() {
            for alias in function.aliases() {
                higher_order.insert(alias.clone(), function.clone());
            }
            higher_order.insert(function.name().to_string(), function);
        }
        let planners: Vec<Arc<dyn ExprPlanner>> = vec![
            Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
            Arc::new(datafusion_functions_nested::planner::NestedFunctionPlanner),
            Arc::new(datafusion_functions_nested::planner::FieldAccessPlanner),
            Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
            Arc::new(datafusion_functions_aggregate::planner::AggregateFunctionPlanner),
        ];
        Self { functions, aggregates, higher_order, planners, options: ConfigOptions::default() }
    }

    /// Plan and compile `query` against `schema`; with `allow_missing`, a column the schema
    /// lacks is added as an all-NULL one (inferred types: a record without the key).
    fn plan(&self, query: &str, schema: SchemaRef, allow_missing: bool) -> Result<Program, String> {
        let mut missing: Vec<Arc<Field>> = Vec::new();
        loop {
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.extend(missing.iter().cloned());
            let table = Arc::new(Schema::new(fields));
            match self.plan_once(query, table) {
                Ok(steps) => return Ok(Program { steps, missing }),
                Err(Planned::DataFusion(error)) => {
                    let absent = match error.find_root() {
                        DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
                            SchemaError::FieldNotFound { field, .. } => Some(field.name.clone()),
                            _ => None,
                        },
                        _ => None,
                    };
                    match absent {
                        Some(name) if allow_missing && missing.len() < MAX_MISSING_COLUMNS => {
                            missing.push(Arc::new(Field::new(name, DataType::Null, true)));
                        }
                        _ => return Err(one_line(&error)),
                    }
                }
                Err(Planned::NotStateless(message)) => return Err(message),
            }
        }
    }

    fn plan_once(&self, query: &str, schema: SchemaRef) -> Result<Vec<Step>, Planned> {
        let plan = self.logical_plan(query, schema)?;
        let props = ExecutionProps::new();
        compile(&plan, &props)
    }

    /// `query` as DataFusion's analyzed and simplified logical plan over `schema`.
    pub(super) fn logical_plan(&self, query: &str, schema: SchemaRef) -> Result<LogicalPlan, Planned> {
        let dialect = datafusion_sql::sqlparser::dialect::GenericDialect {};
        let mut statements = datafusion_sql::parser::DFParser::parse_sql_with_dialect(query, &dialect)?;
        if statements.len() != 1 {
            return Err(Planned::NotStateless(format!(
                "the query must be one SELECT statement (got {})",
                statements.len()
            )));
        }
        let Some(statement) = statements.pop_front() else {
            return Err(Planned::NotStateless("the query is empty".into()));
        };
        let provider = Provider { catalog: self, table: Arc::new(RecordsTable(schema)) };
        let planner = datafusion_sql::planner::SqlToRel::new(&provider);
        let plan = planner.statement_to_plan(statement)?;
        let plan = datafusion_optimizer::Analyzer::new().execute_and_check(plan, &self.options, |_, _| {})?;
        // Before simplifying, which would fold now() into a literal.
        check_plan(&plan)?;
        // Some functions (coalesce, nvl, …) are executable only once simplified; this rule
        // rewrites expressions only, never the plan's nodes, and has no clock to fold.
        let simplify = datafusion_optimizer::Optimizer::with_rules(vec![Arc::new(
            datafusion_optimizer::simplify_expressions::SimplifyExpressions::new(),
        )]);
        let context = datafusion_optimizer::OptimizerContext::new().without_query_execution_start_time();
        Ok(simplify.optimize(plan, &context, |_, _| {})?)
    }
}

pub(super) enum Planned {
    DataFusion(DataFusionError),
    NotStateless(String),
}

impl From<DataFusionError> for Planned {
    fn from(error: DataFusionError) -> Self {
        Planned::DataFusion(error)
    }
}

/// A query's plan as steps, refusing anything that is not one record in, its rows out.
pub(super) fn compile(plan: &LogicalPlan, props: &ExecutionProps) -> Result<Vec<Step>, Planned> {
    compile_above(plan, props, false)
}

/// [`compile`]; with `aggregate_is_input`, an aggregate node is where the steps start (its
/// output is evaluated apart, by a windowed query), so only the nodes above it are compiled.
pub(super) fn compile_above(
    plan: &LogicalPlan,
    props: &ExecutionProps,
    aggregate_is_input: bool,
) -> Result<Vec<Step>, Planned> {
    let compile = |plan: &LogicalPlan, props: &ExecutionProps| compile_above(plan, props, aggregate_is_input);
    let context = datafusion_expr::physical_planning_context::PhysicalPlanningContext::default();
    match plan {
        LogicalPlan::Projection(projection) => {
            let mut steps = compile(&projection.input, props)?;
            let input = projection.input.schema();
            let expressions = projection
                .expr
                .iter()
                .map(|expression| datafusion_physical_expr::create_physical_expr(expression, input, props, &context))
                .collect::<Result<Vec<_>, _>>()?;
            // Every output column nullable: the evaluated arrays decide, not the planner's guess.
            let fields: Vec<Field> = projection
                .schema
                .fields()
                .iter()
                .map(|field| Field::new(field.name(), field.data_type().clone(), true))
                .collect();
            steps.push(Step::Project { expressions, schema: Arc::new(Schema::new(fields)) });
            Ok(steps)
        }
        LogicalPlan::Filter(filter) => {
            let mut steps = compile(&filter.input, props)?;
            let predicate =
                datafusion_physical_expr::create_physical_expr(&filter.predicate, filter.input.schema(), props, &context)?;
            steps.push(Step::Filter(predicate));
            Ok(steps)
        }
        LogicalPlan::SubqueryAlias(alias) => compile(&alias.input, props),
        LogicalPlan::TableScan(scan) => {
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err(Planned::NotStateless("internal: a table scan with pushed-down filters".into()));
            }
            Ok(scan.projection.clone().map(Step::Select).into_iter().collect())
        }
        LogicalPlan::Aggregate(_) if aggregate_is_input => Ok(Vec::new()),
        LogicalPlan::Aggregate(_) => Err(Planned::NotStateless(
            "aggregates (GROUP BY, count, sum, avg, …) need a window, and windows are not supported yet: a stateless sql transform maps each record on its own".into(),
        )),
        LogicalPlan::Window(_) => Err(Planned::NotStateless(
            "window functions (OVER …) are not supported: a stateless sql transform maps each record on its own".into(),
        )),
        LogicalPlan::Sort(_) => Err(Planned::NotStateless(
            "ORDER BY is not supported: records keep their arrival order".into(),
        )),
        LogicalPlan::Limit(_) => Err(Planned::NotStateless(
            "LIMIT / OFFSET are not supported: a stateless sql transform maps each record on its own".into(),
        )),
        LogicalPlan::Distinct(_) => Err(Planned::NotStateless(
            "DISTINCT is not supported: a stateless sql transform maps each record on its own".into(),
        )),
        other => Err(Planned::NotStateless(format!(
            "only SELECT … FROM {TABLE_NAME} [WHERE …] is supported (the query plans to a {} node)",
            other.display()
        ))),
    }
}

/// Refuse what would make a record's outputs depend on more than the record: functions that are
/// not immutable (now(), random(), uuid()) and subqueries, in any node of the plan.
fn check_plan(plan: &LogicalPlan) -> Result<(), Planned> {
    let mut expressions = Vec::new();
    let _ = plan.apply(|node| {
        expressions.extend(node.expressions());
        Ok(TreeNodeRecursion::Continue)
    });
    for expression in &expressions {
        let mut problem = None;
        let _ = expression.apply(|node| {
            match node {
                Expr::ScalarFunction(function) if function.func.signature().volatility != Volatility::Immutable => {
                    problem = Some(format!(
                        "{}() is not supported: its result changes from run to run, and a batch rebuilt after a crash must give the same records",
                        function.func.name()
                    ));
                    Ok(TreeNodeRecursion::Stop)
                }
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_) => {
                    problem = Some("subqueries are not supported: the query reads one record at a time".into());
                    Ok(TreeNodeRecursion::Stop)
                }
                _ => Ok(TreeNodeRecursion::Continue),
            }
        });
        if let Some(problem) = problem {
            return Err(Planned::NotStateless(problem));
        }
    }
    Ok(())
}

struct RecordsTable(SchemaRef);

impl TableSource for RecordsTable {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
}

struct Provider<'a> {
    catalog: &'a Catalog,
    table: Arc<RecordsTable>,
}

impl ContextProvider for Provider<'_> {
    fn get_table_source(&self, name: TableReference) -> datafusion_common::Result<Arc<dyn TableSource>> {
        if name.table() == TABLE_NAME && name.schema().is_none() {
            return Ok(self.table.clone());
        }
        Err(DataFusionError::Plan(format!("table '{name}' not found: the query reads the table `{TABLE_NAME}`")))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.catalog.planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.catalog.functions.get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.catalog.higher_order.get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.catalog.aggregates.get(name).cloned()
    }

    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.catalog.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.catalog.functions.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.catalog.higher_order.keys().cloned().collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.catalog.aggregates.keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processing::transform::{TransformConfig, Transforms};

    fn config(query: &str, columns: Option<&[(&str, &str)]>) -> SqlConfig {
        let schema = columns.map(|columns| {
            let columns: Vec<String> =
                columns.iter().map(|(name, type_name)| format!("{{name: {name}, type: '{type_name}'}}")).collect();
            format!("schema: {{columns: [{}]}}\n", columns.join(", "))
        });
        let yaml = format!("query: \"{query}\"\n{}", schema.unwrap_or_default());
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    fn one_by_one(transforms: &Transforms, records: &[&[u8]]) -> Vec<Outcome> {
        records
            .iter()
            .map(|record| {
                let mut out = Vec::new();
                transforms.apply(record, &mut out).map(|()| out)
            })
            .collect()
    }

    fn text(outcomes: &[Outcome]) -> Vec<Result<Vec<String>, &'static str>> {
        outcomes
            .iter()
            .map(|outcome| match outcome {
                Ok(list) => Ok(list.iter().map(|data| String::from_utf8(data.clone()).unwrap()).collect()),
                Err(failure) => Err(failure.code),
            })
            .collect()
    }

    const RECORDS: [&[u8]; 8] = [
        br#"{"id":1,"n":"12","v":2.5}"#,
        br#"{"id":2,"n":"x","v":10}"#,
        b"not json",
        br#"{"id":"three","n":"3"}"#,
        br#"{"id":4,"n":"40","v":null,"extra":[1]}"#,
        br#"{"id":5,"n":"5","v":7,"more":{"a":"b"}}"#,
        b"[1]",
        b"{\"id\":6,\"n\":\"6\",\"v\":1}\n",
    ];

    #[test]
    fn a_micro_batch_gives_each_record_what_it_gives_alone() {
        let queries =
            ["SELECT id, CAST(n AS BIGINT) * 2 AS twice, v FROM records WHERE id <> 5", "SELECT * FROM records"];
        let given: &[(&str, &str)] = &[("id", "bigint"), ("n", "string"), ("v", "double")];
        for query in queries {
            for columns in [Some(given), None] {
                let sql = TransformConfig::Sql(config(query, columns));
                let transforms = Transforms::build(&[sql]).unwrap();
                let batched = transforms.apply_batch(&RECORDS);
                assert_eq!(text(&batched), text(&one_by_one(&transforms, &RECORDS)), "{query} {columns:?}");
            }
        }
        let sql = TransformConfig::Sql(config(queries[0], Some(given)));
        let outcomes = Transforms::build(&[sql]).unwrap().apply_batch(&RECORDS);
        assert_eq!(
            text(&outcomes),
            [
                Ok(vec![r#"{"id":1,"twice":24,"v":2.5}"#.to_string()]),
                Err(SQL_QUERY_FAILED),
                Err(SQL_NON_JSON_RECORD),
                Err(SQL_MALFORMED_DATA),
                Ok(vec![r#"{"id":4,"twice":80,"v":null}"#.to_string()]),
                Ok(vec![]),
                Err(SQL_MALFORMED_DATA),
                Ok(vec![r#"{"id":6,"twice":12,"v":1.0}"#.to_string()]),
            ],
            "the failing cast fails its record only"
        );
    }

    #[test]
    fn stages_before_and_after_see_the_same_records_batched_or_not() {
        let split = TransformConfig::Jq { expr: ".items[]".into(), raw_output: false };
        let sql = TransformConfig::Sql(config("SELECT k, k * 10 AS k10 FROM records WHERE k % 2 = 1", None));
        let tag = TransformConfig::Jq { expr: ".tag = \"t\"".into(), raw_output: false };
        let transforms = Transforms::build(&[split, sql, tag]).unwrap();
        let records: [&[u8]; 3] =
            [br#"{"items":[{"k":1},{"k":2},{"k":3}]}"#, br#"{"items":[{"k":"a"}]}"#, br#"{"items":[{"k":5}]}"#];
        let batched = transforms.apply_batch(&records);
        assert_eq!(text(&batched), text(&one_by_one(&transforms, &records)));
        assert_eq!(
            text(&batched)[0],
            Ok(vec![r#"{"k":1,"k10":10,"tag":"t"}"#.to_string(), r#"{"k":3,"k10":30,"tag":"t"}"#.to_string()])
        );
        assert_eq!(text(&batched)[1], Err(SQL_QUERY_FAILED), "`k % 2` on a string");
    }

    #[test]
    fn check_reports_datafusions_message_or_why_the_query_is_not_stateless() {
        let table = Table { columns: vec![("id".into(), ColumnType::BigInt), ("s".into(), ColumnType::String)] };
        assert_eq!(check("SELECT id, upper(s) AS u FROM records WHERE id > 3", Some(&table)), Ok(()));
        let refused = |query: &str, expected: &str| {
            let message = check(query, Some(&table)).unwrap_err();
            assert!(message.contains(expected), "{query}: `{expected}` in {message}");
        };
        refused("SELECT nope FROM records", "No field named nope");
        refused("SELEC id FROM records", "SQL error: ParserError");
        refused("SELECT count(*) FROM records", "need a window");
        refused("SELECT r.id FROM records r JOIN records q ON r.id = q.id", "Join");
        refused("SELECT uuid() AS u FROM records", "uuid() is not supported");
        refused("SELECT id FROM records; SELECT id FROM records", "one SELECT statement");
        // Inferred types: any column may exist, the shape is still checked.
        assert_eq!(check("SELECT anything FROM records WHERE other > 1", None), Ok(()));
        assert!(check("SELECT anything FROM records ORDER BY anything", None).unwrap_err().contains("ORDER BY"));
    }
}
